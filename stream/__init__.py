"""Kafka side of soundtag: the producer (`soundtag publish`) and the Faust worker."""
