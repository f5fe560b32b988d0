"""The aiohttp API gateway speaking the OpenStack APIs (grows in the compute issue)."""
