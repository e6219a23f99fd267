"""The local stack (Kafka KRaft, Mosquitto, optional Prometheus) as plain processes; see launcher.py."""
