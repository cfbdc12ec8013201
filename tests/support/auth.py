"""The admin token every test deployment starts with, and the header that carries it."""

ADMIN_TOKEN = "tl_tests-admin-token-0123456789abcdefghijklmnop"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
