"""railgate gateway: reactor, links, pools, CLI (the IO side of the project)."""
