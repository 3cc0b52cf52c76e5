"""The recommender system: users and items instead of queries and documents (issue 12)."""
