"""placeholder"""

from simulator.routing import RouteTable

routes = RouteTable()
