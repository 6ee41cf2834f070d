"""The cloud API client (BMS v1, OpenStack native v2.1, IAM): auth, typed errors, calls."""
