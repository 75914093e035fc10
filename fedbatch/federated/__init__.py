"""Flower apps and the round loop, shared by every engine."""

import time

# When a process began importing this package: a deployed ClientApp process's start-up
# splits here into Flower's (interpreter, Flower, the message) and fedbatch's imports.
IMPORTS_STARTED = time.time()
IMPORTS_STARTED_CPU = time.process_time()  # this process's CPU seconds by then
