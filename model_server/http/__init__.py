"""bertmesh's HTTP front: OpenAI and text-embeddings-inference routes on the same data plane as gRPC.

One module per job: `app` (the FastAPI app and its error handlers), `errors` (domain errors in each API's
shape), `middleware` (auth, body size, metrics), `openai_routes`, `tei_routes`, `encoding` (JSON, base64,
dimensions) and `front` (uvicorn in the server's event loop). Nothing here imports torch.
"""
