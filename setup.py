"""Package list for setuptools: the device profiles folder ships inside the wheel as data."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["edgeinfer", "edgeinfer.*", "converters", "converters.*"])
    + ["edgeinfer.device_profiles"],
    package_dir={"edgeinfer.device_profiles": "device_profiles"},
    package_data={"edgeinfer.device_profiles": ["*.toml"]},
    include_package_data=False,
)
