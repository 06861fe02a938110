"""End-to-end tests: the real ``imip-gateway`` daemon as subprocesses on real sockets."""
