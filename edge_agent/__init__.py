"""Edge agent: camera to scrambled faces over MQTT (issue 6)."""
