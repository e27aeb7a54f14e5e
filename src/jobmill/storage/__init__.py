"""jobmill.storage"""
