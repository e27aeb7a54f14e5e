"""jobmill.cli"""
