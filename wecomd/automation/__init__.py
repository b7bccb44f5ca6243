"""Rules and what they run: the rule runner, rule parsing and matching, commands."""
