"""The adversary: membership scores from the shared one-pass log-probs, and active attacks.

Convention for every score: higher = more likely a member.
"""
