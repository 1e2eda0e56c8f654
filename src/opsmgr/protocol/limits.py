"""Size limits of the agent channel, shared by the server, the agent and the gateway.

Both ends enforce them: the sender forms batches within them, the receiver refuses anything larger.
"""

from __future__ import annotations

AGENT_PORT = 5723
# gRPC's own cap on one message; a DataBatch larger than this never reaches our code.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Items per batch: bounds one transaction's size and the work lost when a batch is refused.
MAX_BATCH_ITEMS = 5000
MAX_TASK_OUTPUT_BYTES = 64 * 1024
MAX_STRING_CHARS = 32 * 1024  # descriptions and property values; longer text is refused, not silently cut
MAX_KEY_CHARS = 512  # object keys, counter and monitor names
MAX_DISCOVERY_PROPERTIES = 256
