//! The LINE emulator (the sandbox helper owns this folder).
