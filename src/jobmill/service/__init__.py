"""jobmill.service"""
