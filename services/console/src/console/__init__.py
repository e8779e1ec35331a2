"""Console: workspaces, datasets and documents (Dify's /console/api), consistent with the index by an outbox."""
