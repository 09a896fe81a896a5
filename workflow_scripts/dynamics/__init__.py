"""Training dynamics (issue 20): what the kept checkpoints say about when, and in which layer,
a run's specialisation appears."""
