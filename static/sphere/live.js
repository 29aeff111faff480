// Subscribes to a live-event topic and reconnects with backoff when the connection drops.
window.sphereLive = function (topic, onEvent, onState) {
  let delay = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/live/${topic}/`);
    socket.onopen = () => { delay = 500; onState("live"); };
    socket.onmessage = (message) => {
      const payload = JSON.parse(message.data);
      onEvent(payload.event, payload.data);
    };
    socket.onclose = () => {
      onState("reconnecting…");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }
  connect();
};
