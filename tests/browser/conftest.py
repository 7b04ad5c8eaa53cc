def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "browser: drives headless Chromium through Playwright against a real "
        "tensorboard process (needs Debian's chromium and the playwright package)",
    )
