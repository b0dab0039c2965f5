"""Packaging for chatterbox-status: a TTS server for Chatterbox with real-time status."""

from setuptools import find_packages, setup

setup(
    name="chatterbox-status",
    version="0.1.0",
    description=(
        "OpenAI-compatible text-to-speech server for Resemble AI's Chatterbox "
        "with real-time status tracking"
    ),
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"chatterbox_status": ["web/*"]},
    install_requires=[
        "aiohttp>=3.9,<4",
        "aiohttp-sse>=2.2",
        "av>=12",
        "numpy>=1.24",
        "prometheus-client>=0.17",
        "psutil>=5.9",
        "pydantic>=2.5,<3",
        "hibari-tts>=0.2.1,<0.3",
        "wyoming>=1.10,<2",
    ],
    extras_require={
        # Resemble AI's models; on a CUDA machine this brings torch with CUDA.
        "chatterbox": ["chatterbox-tts>=0.1.7"],
        # REDIS_URL: several server processes sharing one event log. redis-py 8.2 never
        # finishes cancelling a blocking XREAD, so a server on it could not stop.
        "redis": ["redis>=5.2,<8.2"],
        "test": [
            "pytest>=8",
            "pytest-aiohttp>=1.0",
            "schemathesis>=4.32,<5",
            "openapi-spec-validator>=0.7",
            "pocketsphinx==5.0.4",
            "redis>=5.2,<8.2",
        ],
    },
    entry_points={
        "console_scripts": ["chatterbox-status=chatterbox_status.cli:main"],
    },
    classifiers=[
        "Framework :: AsyncIO",
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
    ],
)
