"""The Kafka side of the alarm pipeline: embedded broker, relay (journal -> topics by date), relay process supervisor, topics, snapshots, the HMI consumer library."""
