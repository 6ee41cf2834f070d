"""The Celery application: settings, queues per API class, routing, global limiter, beat."""
