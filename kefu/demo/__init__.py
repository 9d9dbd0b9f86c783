"""The demo back-office systems the demo tenant's plugins call (the order center)."""

from kefu.demo.order_center import OrderCenter, OrderCenterFaults, seed_order_center

__all__ = ["OrderCenter", "OrderCenterFaults", "seed_order_center"]
