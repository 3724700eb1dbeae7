"""Integration scenarios: real S3 servers (MinIO and versitygw), real streamer processes and
real recordings. Every test here is marked `integration`, and `make unit` leaves it out."""
