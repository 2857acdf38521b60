"""The operator's console: web pages served by the recognizer (``web``), fed by the events and
agent statuses on the broker (``feed``), with Home Assistant discovery (``homeassistant``)."""
