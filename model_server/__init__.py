"""bertmesh model server: gRPC inference for BERT-family models, its client SDK and the `bertmesh` CLI."""
