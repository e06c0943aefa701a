// The application of bench/node-vs-peers.py: hello world on Node.js's plain
// http module, listening where it is told (PORT: fcgi-shim, mod_proxy_http)
// or wherever Passenger's loader puts it (it takes over listen()).
const http = require('http');
http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': '12' });
  res.end('hello world\n');
}).listen(+process.env.PORT || 3000, '127.0.0.1');
