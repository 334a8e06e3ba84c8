"""Runtime layer: the flow graph, the plan built from it, and the loop that runs it."""
