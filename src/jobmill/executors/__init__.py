"""jobmill.executors"""
