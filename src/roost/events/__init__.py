"""Events: everything that happens in the fleet, as CloudEvents 1.0."""
