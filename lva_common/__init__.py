"""What both processes use: errors, configuration, logging, TLS, signals."""
