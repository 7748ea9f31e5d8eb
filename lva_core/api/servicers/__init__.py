"""The servicers: protobuf in, domain calls, protobuf out."""
