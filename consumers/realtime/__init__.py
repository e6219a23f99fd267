"""Real-time engineering for operators: Kafka ``tlm.eng.realtime`` + ``ops.alerts`` -> MQTT."""
