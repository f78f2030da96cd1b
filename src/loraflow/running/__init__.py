"""Submitting and running jobs: the one submit door and its trust policy, the runner process and its stages,
the worker and follower that keep many jobs moving, leases on rented hosts, and the periodic duties."""
