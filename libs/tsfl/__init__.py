"""TrustStram FL: federated learning across devices and organisations.

One pipeline, two deployments: the same stage code runs embedded in one process
(in-memory bus, SQLite) or distributed (Kafka, Postgres, gRPC).
"""

__version__ = "0.1.0"
