"""Device models: the ISA basics (serial, debug-exit) and the disk controllers."""
