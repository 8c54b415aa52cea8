"""Made-up leads for the benches: job titles, industries and countries as weighted
tables, the personal email domains fit scores down, first names, plans."""

from __future__ import annotations

TITLES = (
    ("CTO", 3),
    ("Chief Executive Officer", 2),
    ("Co-Founder", 2),
    ("VP Engineering", 3),
    ("Head of Growth", 3),
    ("Engineering Manager", 6),
    ("Director of Marketing", 5),
    ("Sales Lead", 4),
    ("Software Engineer", 20),
    ("Senior Data Analyst", 8),
    ("Marketing Specialist", 8),
    ("Account Executive", 6),
    ("Consultant", 5),
    ("Student", 5),
    ("Designer", 5),
)
INDUSTRIES = (
    ("Software", 20),
    ("SaaS", 10),
    ("Internet", 6),
    ("Information Technology", 8),
    ("Financial Services", 10),
    ("Retail", 8),
    ("Healthcare", 8),
    ("Education", 6),
    ("Manufacturing", 8),
    ("Consulting", 8),
    ("Media", 4),
)
COUNTRIES = (
    ("US", 30),
    ("United States", 5),
    ("DE", 10),
    ("GB", 10),
    ("CA", 5),
    ("FR", 8),
    ("NL", 5),
    ("IN", 10),
    ("BR", 7),
    ("ES", 5),
    ("AU", 5),
)
PERSONAL_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "icloud.com", "web.de")
FIRST_NAMES = ("anna", "ben", "chloe", "david", "emma", "felix", "grace", "hugo", "ines", "jon")
PLANS = ("free", "starter", "pro", "enterprise")


def weighted(table: tuple[tuple[str, int], ...]) -> tuple[list[str], list[int]]:
    return [value for value, _ in table], [weight for _, weight in table]
