"""The application: configuration, the one wiring object (Gateway), status assembly, the alarm stage."""
