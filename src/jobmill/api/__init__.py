"""jobmill.api"""
