"""Media: video and audio decoding and encoding (PyAV), length policies, in-memory frames, whole-clip I/O."""
