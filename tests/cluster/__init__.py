"""A cluster on one machine: PostgreSQL (and the Kafka-protocol broker Tansu) in one network
namespace, worker "hosts" in others, veth links between them, real network faults (nftables
drops, ``tc netem`` latency and loss) and a Jepsen-style checker of every run's history.
See docs/network-faults.md."""
