"""Intake: transports that bring goal states in (gRPC, Kafka) and send replies back."""
