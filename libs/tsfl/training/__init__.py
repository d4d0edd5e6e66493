"""Local training, shared by the device SDK and the server's FLTrust root model: a torch
module over one flat parameter vector (:mod:`flat`) and the epoch loop (:mod:`loop`).
Knows nothing of transports, the bus or the database."""
