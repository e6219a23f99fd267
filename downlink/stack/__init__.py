"""The local stack (Kafka KRaft, Mosquitto, optional Prometheus, PostgreSQL on demand) as plain processes; see launcher.py."""
