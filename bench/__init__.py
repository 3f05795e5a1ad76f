"""The benchmark harness: measures the mesh against a no-mesh baseline in the same run."""
