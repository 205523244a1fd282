"""Tools for the people who run hroute: `hroute doctor`, `hroute demo`, `hroute status --watch`.

They talk to the daemon only through its socket API (`hroute.client`), as any agent does.
"""
