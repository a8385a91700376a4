"""Train coupling/decoupling: the counter engine and its worker threads. No IO."""
