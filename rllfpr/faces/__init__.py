"""Face preparation shared by the trainer and the edge agent: detection and alignment."""
