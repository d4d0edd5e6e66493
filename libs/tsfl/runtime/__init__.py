"""Deployments: the embedded runtime (one process) and, later, the distributed one."""
