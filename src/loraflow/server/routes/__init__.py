"""The service's doors, one FastAPI router per resource: jobs, uploads, money, platform, and the web UI's
pages; each route checks who asks and calls a use case below it, which holds the rules."""
