"""The alarm pipeline: sources, engine, journal; Kafka relay, history and Redis live table (docs/alarm-pipeline.md)."""
